"""TPS adapters: one protocol (``base.TPS``) in front of every planning system.

``ADAPTERS`` is the one place a TPS is registered; every entry passes ``base.check_tps``.
"""

from rtautoplan.adapters.base import TPS, ConformanceError, check_tps
from rtautoplan.adapters.dicom_export import DicomExport
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.adapters.inhouse_proton import InHouseProton
from rtautoplan.adapters.phoenix import PhoenixAdapter

ADAPTERS: dict[str, type] = {
    "inhouse-photon": InHousePhoton,
    "inhouse-proton": InHouseProton,
    "phoenix": PhoenixAdapter,
    "dicom-export": DicomExport,
}

__all__ = ["ADAPTERS", "TPS", "ConformanceError", "check_tps", "InHousePhoton", "InHouseProton", "PhoenixAdapter", "DicomExport"]
