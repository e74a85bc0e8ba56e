"""The descriptor pool etcd's messages live in: spear's own, not protobuf's default."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
