"""Simulated people: the users that answer the robot's questions in evaluation and training.

They know the truth (a place's annotation facts or its description), which no robot does:
robot-side code (the dialogue session, questioners, answer updates, the ROS nodes) must never
import this package, and an import-linter contract in pyproject.toml enforces it.
"""
