"""Data: the embedded synthetic world, media files, clip extraction, dataset downloads."""
