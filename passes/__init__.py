"""Built-in passes, one module each; registered through the ``onnxslim.passes`` entry points."""
