"""Each task's serving parts, torch-free, one module a task: its onnxruntime predictor, its ``/v1``
request schema and call (``deploy.serving.TaskAPI``) and its Open Inference Protocol tensors
(``deploy.open_inference.Tensors``). ``zoo.common.tasks`` names them; nothing else lists tasks."""
