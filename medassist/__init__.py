"""medassist: drafts grounded CT reports from DICOM CT and EMR notes for clinician review.

Not a medical device: every draft is marked DRAFT until a clinician signs it.
"""

__version__ = "0.1.0"
