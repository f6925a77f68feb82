"""SynthCities: procedural street-view places with exact DQ-Cities-style ground truth.

No street-view imagery can be downloaded in this project, so places are generated:
static, describable streets (buildings, signs, furniture, trees) photographed several
times under changing viewpoint, zoom, light, season and traffic, written in the
GSV-Cities layout with DQ-Cities annotation layers (see ``docs/annotations.md``).
"""

from dlgpr_core.synth.city import GENERATOR_VERSION, CityManifest, generate_city, manifest_path

__all__ = ["GENERATOR_VERSION", "CityManifest", "generate_city", "manifest_path"]
