"""Which compiler turns which policy kind into the ordered form (see :mod:`podnet.calc.policy`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podnet.calc.policy import CompileContext, CompiledPolicy, HostSelection, HostSubject, Selection
from podnet.calc.policy_admin import compile_admin_policy
from podnet.calc.policy_calico import calico_host_selection, compile_calico_policy
from podnet.calc.policy_knp import compile_network_policy
from podnet.calc.policy_sets import SetBuilder
from podnet.model.admin_policy import AdminNetworkPolicy, BaselineAdminNetworkPolicy
from podnet.model.calico import CalicoNetworkPolicy, GlobalNetworkPolicy
from podnet.model.cluster_network_policy import ClusterNetworkPolicy
from podnet.model.k8s_policy import NetworkPolicy

Compiler = Callable[[Any, SetBuilder, CompileContext], tuple[CompiledPolicy, Selection]]


def _compilers() -> dict[type, Compiler]:
    """Every kind's compiler."""
    return {
        NetworkPolicy: compile_network_policy,
        CalicoNetworkPolicy: compile_calico_policy,
        GlobalNetworkPolicy: compile_calico_policy,
        AdminNetworkPolicy: compile_admin_policy,
        BaselineAdminNetworkPolicy: compile_admin_policy,
        ClusterNetworkPolicy: compile_admin_policy,
    }


def compile_kind(
    policy: Any, builder: SetBuilder, context: CompileContext
) -> tuple[CompiledPolicy, Selection]:
    """The compiled form of ``policy`` and what it selects (a policy that cannot be compiled comes
    back failed closed, with its error)."""
    compiler = _compilers().get(type(policy))
    if compiler is None:
        raise TypeError(f"no policy compiler for {type(policy).__name__}")
    return compiler(policy, builder, context)


def _no_host(subject: HostSubject) -> bool:
    return False


def host_selection(policy: Any) -> HostSelection:
    """Which host endpoint interfaces ``policy`` applies to: only a GlobalNetworkPolicy selects
    host endpoints (:func:`calico_host_selection`); every other kind selects none."""
    if isinstance(policy, GlobalNetworkPolicy):
        return calico_host_selection(policy)
    return _no_host
