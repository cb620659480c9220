"""DICOM in and out.

- ``read``: ``read_case(folder) -> Case`` (CT series + RTSTRUCT + prescription.json), ``write_case``.
- ``series``: an image series as a Grid (slice order, geometry checks), HU, the DicomRefs.
- ``rtstruct``: ``write_rtstruct`` / ``read_rtstruct``; ``contours``: mask ↔ planar contours.
- ``ct``: ``write_ct``; ``prescription``: prescription.json; ``modules``: PS3.3 modules shared by
  every object we write; ``uid``: new UIDs.

Submodules are imported explicitly (``from rtautoplan.dicom.read import read_case``) so that
importing one does not pull in the others.
"""
