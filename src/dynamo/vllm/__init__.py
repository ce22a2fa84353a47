"""vLLM worker: a real engine behind the frontend and the KV router.

    python -m dynamo.vllm --model MODEL_DIR [vLLM engine flags...] [Dynamo flags...]

Runs vLLM's async engine in this process (its engine core in a child process), serves token-level
requests on dyn://{namespace}.backend.generate, registers a model card filled from the engine's real
configuration, bridges the engine's KV events to the event plane for KV-aware routing, and reports
KV usage for busy detection. vLLM is imported only when a worker starts, so the rest of the package
installs and runs without it.
"""
