"""Students: the seam to Ultralytics models (the only package that touches Ultralytics internals)."""
