"""Judges that read only text: the string-match refusal classifier (`refusal`).

They sit in the lowest layer because data filters (a harmful-compliance source keeps only
answers that do not refuse) and evaluation both use them.
"""
