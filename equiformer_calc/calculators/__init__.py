"""ASE calculators of an Equiformer model: one base (:mod:`.base`: the ASE protocol, settings in
``parameters``, batched ``predict``), the model's settings (:mod:`.settings`: :class:`~equiformer_calc.calculators.settings.ModelSettings`,
the one home of checkpoint, device, dtype, memory, skin, D3 and uncertainty) and the local subclass
(:mod:`.local`: :class:`EquiformerCalculator`, the model evaluated in this process, and
``resolve_calculator``, what every workflow's ``calculator=`` goes through). The remote subclass, the same
interface evaluated by a server, is ``equiformer_calc.service.client.RemoteEquiformerCalculator``.
Adapters to other programs (i-PI, LAMMPS, D3) live in ``equiformer_calc.integrations``.

Import the local calculator as ``from equiformer_calc import EquiformerCalculator`` (loads torch on
first use) or from :mod:`equiformer_calc.calculators.local`.
"""
