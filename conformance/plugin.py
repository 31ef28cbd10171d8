"""pytest11 entry point of specsample's conformance suite (filled in by the conformance issue).

Kept import-cheap: it loads in every pytest run of an environment where specsample is installed.
"""
