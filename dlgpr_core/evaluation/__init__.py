"""Evaluation of whole dialogues on held-out cities (the paper's Table 1) and its reports.

It plays the person with a simulated user who knows the target (ground truth), so it sits
above the robot-side dialogue package and may never be imported by it (an import-linter
contract in pyproject.toml says so).
"""
