"""lithocore: the library behind the lithological-mapping workbook.

One module per concept (the map is in the README): a run and its settings (:mod:`lithocore.run`,
:mod:`lithocore.settings`, :mod:`lithocore.plan`), the study area and its sources (:mod:`lithocore.area`,
:mod:`lithocore.data`, :mod:`lithocore.sources`), fusion, tiles and networks, evaluation, the map to use, outputs.

Importing it starts no deep-learning framework and changes no global state: the framework starts where a
network is first needed (:func:`lithocore.framework.start_keras`), and a notebook asks for plain warnings with
:func:`lithocore.errors.plain_warnings`.
"""

__version__ = "0.1.0"
