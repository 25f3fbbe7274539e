"""Mock Fractal task package used by the fractal-grpc test suite.

Every task is a stdlib-only script that follows the Fractal V2 task-side CLI contract
(``python <task>.py --args-json ARGS --out-json OUT``); ``__FRACTAL_MANIFEST__.json`` lists
them. Zarr "images" are plain folders holding a small ``data`` file.
"""

__version__ = "0.1.0"
