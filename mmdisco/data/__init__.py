"""Data: the embedded synthetic world, media files, the media manifest, clip extraction and the
clips folder, dataset downloads."""
