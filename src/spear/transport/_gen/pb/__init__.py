"""protobuf's messages for spear.v1 (see tools/gen_protos.py)."""
