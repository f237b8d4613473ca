"""Reports: the NCA view, panoramas, the CNN baseline and the HTML report of the main job."""
