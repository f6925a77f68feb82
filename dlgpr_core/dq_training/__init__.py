"""Training data, curriculum and rewards for the DQ-pilot questioner (paper Sec. 4.3).

It plays the user (the fact-based simulated user answers the teacher's questions), so it
sits above the robot-side dialogue package, which may never import it (import-linter).
"""
