"""What spans tasks: the main job's HTML report (every shipped model kind on one page)."""
