"""Open Inference Protocol (KServe V2) gRPC contract: package ``inference``, service GRPCInferenceService.

Ordinary generated code (scripts/gen_protos.py), registered in protobuf's default descriptor pool like the
other contracts, so server reflection describes it. tritonclient, MLServer and the KServe SDK register the
same ``inference.*`` symbols in that pool, so importing one of them next to this package fails with
"duplicate symbol 'inference.ServerLiveRequest'" (triton-inference-server/client#730, kserve/kserve#3099):
the server never imports them, and the tests drive tritonclient in a child process
(tests/tritonclient_process.py).
"""
