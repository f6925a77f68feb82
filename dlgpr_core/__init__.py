"""dlgpr_core: the ROS-free library behind dialogue place recognition.

Importing this package must stay cheap (no torch, no faiss at import time) so that the
command line and the ROS nodes start fast; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
