"""Footage to clips: cut plans, orbit QC, the manifest and the captions (`circle-rotate prepare`, `caption`)."""
