"""Spoken input without ROS: audio normalisation, voice activity detection, Whisper backends."""
