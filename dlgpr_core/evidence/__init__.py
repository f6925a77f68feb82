"""Evidence from images: what the robot knows about its map comes from the map's images.

Annotators (a learned model shipped with the package, zero-shot phrase scoring with the
map's image-text encoder, a teacher vision-language model with noun-phrase extraction, OCR)
turn each image into evidence items (`dlgpr_core.mapdb.evidence.EvidenceItem`) stored in the
map; `knowledge` aggregates them per place into the probabilities the questioners and the
answer update use. Nothing here reads a data set's ground-truth annotations.
"""
