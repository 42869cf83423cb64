"""Generated from proto/rlfleet/v1 by `python -m rlfleet.codegen`; do not edit."""
