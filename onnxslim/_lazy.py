"""Start-up: onnx-ir imports sympy at module level (about a third of ``import onnxslim``) but
needs it only for arithmetic on symbolic dims (``SymbolicDim`` checks ``str`` before
``sympy.Expr``; ``onnx_ir._symbolic_shapes`` builds a table of sympy functions at import and is
only used to parse such expressions). A stand-in module for each imports the real sympy on the first attribute anyone asks it
for, which most runs never do. (importlib's LazyLoader would not do: the import statement itself
touches the module and triggers it.)

The same for onnxscript, of which ``simplify`` uses the optimizer and rewriter only: its
``__init__`` imports the script converter and every opset module (about half of its import
time). :func:`defer_package` lets its submodules import without it and runs it on first use
of one of its own attributes. Its folder imports ``onnx.reference.ops`` (every reference op
implementation) for the few nodes its own evaluators lack, which most models have none of:
:func:`defer_submodule` imports it on first use."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types


class _DeferredModule(types.ModuleType):
    def __getattr__(self, name: str):
        # The import system asks for __path__ (submodules: ``import sympy.core``), star-imports
        # for __all__: those need the real module too. Other dunders are probes: not found.
        if name.startswith("__") and name not in ("__path__", "__all__", "__file__"):
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__class__"})
        return getattr(real, name)


def defer(name: str, spec: importlib.machinery.ModuleSpec | None = None) -> None:
    if name in sys.modules:
        return
    module = _DeferredModule(name)
    module.__spec__ = spec
    sys.modules[name] = module


def defer_sympy() -> None:
    if "onnx_ir" in sys.modules or importlib.util.find_spec("sympy") is None:
        return
    defer("sympy", importlib.util.find_spec("sympy"))
    # A submodule's spec cannot be looked up without importing its package: none is needed.
    defer("onnx_ir._symbolic_shapes")


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` has not run: submodules import through ``__path__``; the
    first other attribute asked for runs ``__init__`` in this module object."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        submodule = f"{self.__name__}.{name}"
        if submodule in sys.modules or importlib.util.find_spec(submodule) is not None:
            return importlib.import_module(submodule)  # ``from package import submodule``
        self.__class__ = types.ModuleType  # from here on a plain module: no lookup comes back here
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def defer_package(name: str) -> None:
    """Import package ``name`` without running its ``__init__`` until one of its own attributes
    is used (see :class:`_DeferredPackage`); nothing to do if it is imported already. A
    subpackage becomes its (imported) parent's attribute, as an import would have made it."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    module = _DeferredPackage(name)
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__loader__ = spec.loader
    module.__package__ = name
    sys.modules[name] = module
    if parent:
        setattr(importlib.import_module(parent), child, module)


def defer_submodule(name: str) -> None:
    """:func:`defer` for a submodule whose package is imported (or cheap to import): the stand-in
    is also the package's attribute, as an import would have made it."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    package = importlib.import_module(parent)
    if child in vars(package):
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    defer(name, spec)
    setattr(package, child, sys.modules[name])
