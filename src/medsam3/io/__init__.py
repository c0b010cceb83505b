"""Readers and writers: DICOM, SimpleITK formats, 2D images, video, Zarr stores and mask files."""
