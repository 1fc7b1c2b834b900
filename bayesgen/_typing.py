"""Type aliases shared by public signatures."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any, TypeAlias

import torch

DeviceLike: TypeAlias = str | torch.device
"""``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`."""

PathLikeStr: TypeAlias = str | PathLike[str]

ModelFn: TypeAlias = Callable[..., Any]
"""A Pyro model or guide: a callable that issues ``pyro.sample``/``pyro.param``."""
