"""Domains: a dataset plus a filter on its frames' attributes, resolved from params (data.domains) and
opened through the dataset registry; SynthDrive writes several visual presets into one root."""
from __future__ import annotations

import pytest

from mtwork.config import ParamsError, load_params
from mtwork.plan import domain, planned_datasets, planned_domains

from tests.unit.test_config import PARAMS


@pytest.fixture(scope="module")
def two_presets(tmp_path_factory, synthdrive_tiny_args):
    """One SynthDrive root with the clear_day and night presets (per preset: 6/3 det, 4/2 seg images)."""
    from mtwork.data.synthdrive import generate_synthdrive

    root = tmp_path_factory.mktemp("synthdrive") / "root"
    args = dict(synthdrive_tiny_args)
    args.pop("domain")
    generate_synthdrive(root, domains=["clear_day", "night"], **args)
    return root


def test_domains_resolve_to_a_dataset_root_and_filter():
    params = load_params(PARAMS)
    src = domain(params, "clear_day")
    assert (src.dataset, src.format, str(src.root)) == ("synthdrive", "bdd100k", "data/synthdrive")
    assert src.attributes == {"weather": "clear", "timeofday": "daytime"}
    # source 1: the source and DG domains; source 2 adds its transfer target
    assert planned_domains(params) == ["clear_day", "dusk_fog", "night"] and planned_datasets(params) == ["synthdrive"]
    user = load_params(PARAMS, ["data.datasets.synthdrive.generate=false", "data.datasets.synthdrive.root=/d/sd"])
    assert str(domain(user, "night").root) == "/d/sd"


@pytest.mark.parametrize("override, key", [
    ("data.source_domain=moon", "data.source_domain"),
    ("data.dg_domains=[clear_day]", "data.dg_domains"),
    ("data.domains.night.dataset=kitti", "data.domains.night.dataset"),
    ("data.domains.night.attributes={season: winter}", "data.domains.night.attributes.season"),
    ("data.datasets.synthdrive.format=kitti", "data.datasets.synthdrive.format"),
    ("data.datasets.cs={format: cityscapes, root: null}", None),  # fine: a dataset no domain uses
    ("data.domains.cs={dataset: cs, attributes: {weather: clear}}", "data.domains.cs.dataset"),
])
def test_bad_domain_settings_name_the_key(override, key):
    if key is None:
        load_params(PARAMS, [override])
        return
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(PARAMS, [override])


def test_open_domain_reads_only_the_domains_frames(two_presets):
    from mtwork.data.bdd100k import domain_images, load_frame_attributes
    from mtwork.data.registry import open_domain

    params = load_params(PARAMS)
    attributes = load_frame_attributes(two_presets)
    day = open_domain(params, "clear_day", "train", ("semseg", "det"), root=two_presets)
    night = open_domain(params, "night", "train", ("semseg", "det"), root=two_presets)
    assert len(day) and len(night) and not set(day.names) & set(night.names)
    assert {attributes[n]["timeofday"] for n in day.names} == {"daytime"}
    assert {attributes[n]["timeofday"] for n in night.names} == {"night"}
    # the pretraining images of a domain: its frames only, of both image sets
    images = domain_images(two_presets, "train", {"timeofday": "night"})
    assert {attributes[p.name]["timeofday"] for p in images} == {"night"}
    assert len(images) == len({p.name for p in domain_images(two_presets, "train")}) // 2
    with pytest.raises(ParamsError, match="known: clear_day, dusk_fog, night"):
        open_domain(params, "moon", "train", ("semseg",), root=two_presets)
