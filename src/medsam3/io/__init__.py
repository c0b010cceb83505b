"""Readers and writers: DICOM, SimpleITK formats, 2D images, video and Zarr stores."""
