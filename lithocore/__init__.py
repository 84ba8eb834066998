"""lithocore: the library behind the lithological-mapping workbook.

One module per pipeline stage: :mod:`lithocore.data` (manifests, loading, alignment),
:mod:`lithocore.synthetic` (the embedded synthetic study area), :mod:`lithocore.plotting` (maps),
:mod:`lithocore.workbook` (running the notebooks with papermill). Importing it has no side effects.
"""

__version__ = "0.1.0"
