"""Lobe segmentation on the preprocessed grid: a labelled synthetic atlas registered to each
subject, or TotalSegmentator. Stands above the synthetic cohort, whose head is the atlas.
"""
