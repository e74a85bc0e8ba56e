"""The node API: the `NodeAPI` seam, its implementations (in process, cluster, gRPC
client), the gRPC service that serves it, and the assembly of every kind of process."""
