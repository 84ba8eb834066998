"""lithocore: the library behind the lithological-mapping workbook.

One module per pipeline stage: :mod:`lithocore.data` (manifests, loading, alignment),
:mod:`lithocore.synthetic` (the embedded synthetic study area), :mod:`lithocore.plotting` (maps),
:mod:`lithocore.workbook` (running the notebooks with papermill).

Importing it starts no deep-learning framework and changes no global state: the framework starts where a
network is first needed (:func:`lithocore.framework.start_keras`), and a notebook asks for plain warnings with
:func:`lithocore.errors.plain_warnings`.
"""

__version__ = "0.1.0"
