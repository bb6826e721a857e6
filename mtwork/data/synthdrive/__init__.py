"""SynthDrive: a procedural driving-scene generator that writes the BDD100K layout.

Entry point: ``generate_synthdrive`` (writer.py). Modules: domains (visual presets, a registry),
scene (random layouts in metres), shapes (object drawings), render (rasterising image and label
maps), writer (files, det JSON, metadata), contact_sheet (a picture to look at).
"""
from mtwork.data.synthdrive.domains import DOMAINS, Domain, get_domain
from mtwork.data.synthdrive.writer import DEFAULT_COUNTS, GENERATOR_VERSION, generate_synthdrive

__all__ = ["DOMAINS", "DEFAULT_COUNTS", "Domain", "GENERATOR_VERSION", "generate_synthdrive", "get_domain"]
