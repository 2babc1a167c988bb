"""Applications on a trained run: the portable bundle, brain age for new scans (with step 09 on
the run), and a DICOM tree indexed into a cohort manifest.
"""
