"""ViT on TensorFlow Serving's protocol: the one service not declared as kit Operations.

TF Serving's protocol routes a request by model, version or label in its path (REST) or ModelSpec (gRPC), reads
bodies by TF Serving's own JSON and TensorProto rules into tensors whose names, dtypes and shapes come from the
model's signatures, answers errors as `{"error": "..."}`, and serves whatever models the config in force names (a
reload adds and removes them). A kit `Operation` binds one pydantic request model to one fixed route, one method of
a proto of ours and one OIP model, so declaring these that way would change TF Serving's wire format. The server
therefore keeps the other services' layering with its own transports, in its own process (TensorFlow) on TF
Serving's ports, REST :8501 and gRPC :8500 (`python -m services.vit`):

- `servables.py`: a loaded SavedModel version, its signatures, the Predict job and TF Serving's input checks
  (the lowest layer: everything else builds on it);
- `runner.py`: the model config's models and versions (policies, polling, reloads, warm-up records) and batched
  prediction, no web code; `model_config.py`, `limits.py`, `errors.py`, `settings.py` below it;
- `schemas.py` (Predict's JSON tensors, status and metadata) and `examples.py` (Classify and Regress): the wire
  formats and the checks that turn a request into a job;
- `server.py`: `create_service`, which binds the runner to `rest.py` (`rest_router`), `grpc_servicer.py`
  (`grpc_servicers`) and `oip.py` (`oip_models`);
- `export.py`: the SavedModel exporter (`python -m services.vit.export`; not in the server image).
- `registry.py`: what the platform, images, tools and load tests read about ViT (`services/registry.py`).
"""
