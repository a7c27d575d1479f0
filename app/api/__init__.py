"""The control plane: REST and gRPC APIs for collectors, workflows, inputs and
concept relations. Start reading at server.py."""
