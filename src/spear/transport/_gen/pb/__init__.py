"""protobuf's messages for spear.v1 (see gen_protos.py)."""
