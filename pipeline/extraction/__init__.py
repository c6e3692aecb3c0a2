"""Stage one, extraction: images -> decoded batches -> frozen backbone -> the HDF5 features file (DVC stage extract)."""
