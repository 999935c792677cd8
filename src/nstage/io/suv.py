"""SUV body weight (SUVbw) from PET DICOM header fields (CLINICAL.md section 4).

Pure functions: nothing here reads files. :func:`suv_factor` takes the header fields of
the instances of one PET series (``pydicom.Dataset`` objects, dicts keyed by DICOM keyword,
or DICOM JSON model dicts) and returns the factor that turns *rescaled* pixel values
(``stored x RescaleSlope + RescaleIntercept``, per slice) into SUVbw in g/ml::

    SUVbw = rescaled_value x factor

Rules (QIBA FDG-PET/CT profile, vendor-neutral SUV pseudo-code):

- Units BQML: ``factor = weight_g / decayed_dose_Bq``; ``decayed_dose = dose x
  2^(-(scan - injection) / half_life)`` for DecayCorrection START, ``dose`` for ADMIN.
- Units CNTS (Philips): private (7053,1000) is the SUV scale factor itself; else
  (7053,1009) turns rescaled values into Bq/ml and the BQML rule follows.
- Units GML: already SUVbw, factor 1.
- Scan time: SeriesDate/SeriesTime unless later than the earliest AcquisitionDate/Time of the
  series (post-processed series); then the GE private scan datetime (0009,100D) when present,
  else the earliest acquisition.
- Injection time: RadiopharmaceuticalStartDateTime (0018,1078), else
  RadiopharmaceuticalStartTime (0018,1072) on the scan date, one day earlier when that puts
  the injection after the scan (midnight crossing).

Missing or implausible weight, dose, half-life or times raise :class:`nstage.errors.SUVError`
naming the DICOM tag; nothing is silently defaulted.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nstage.errors import SUVError, UsageError

F18_HALF_LIFE_S = 6586.2
"""Fluorine-18 half-life in seconds (109.77 min)."""

# Plausibility limits: outside them a header value is almost surely in the wrong unit.
WEIGHT_RANGE_KG = (10.0, 350.0)
DOSE_RANGE_BQ = (1.0e6, 1.0e10)       # 1 MBq .. 10 GBq; FDG is typically 150-600 MBq
HALF_LIFE_RANGE_S = (100.0, 30 * 86400.0)
MAX_UPTAKE_S = 6 * 3600.0              # beyond this, clocks or dates are wrong
USUAL_UPTAKE_S = (45 * 60.0, 90 * 60.0)

PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"

TAGS = {
    "PatientWeight": "(0010,1030)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
    "Units": "(0054,1001)",
    "DecayCorrection": "(0054,1102)",
    "CorrectedImage": "(0028,0051)",
    "SUVScaleFactor": "(7053,1000)",
    "ActivityConcentrationScaleFactor": "(7053,1009)",
}

_RADIOPHARM_KEYS = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
                    "RadiopharmaceuticalStartDateTime", "Radiopharmaceutical",
                    "RadionuclideCodeSequence")


def tag_name(keyword: str) -> str:
    """``"PatientWeight (0010,1030)"`` for messages."""
    return f"{keyword} {TAGS[keyword]}" if keyword in TAGS else keyword


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SUVFactor:
    """How stored PET values become SUVbw.

    Attributes
    ----------
    factor : float
        Multiply rescaled pixel values (Bq/ml for BQML, counts for CNTS, g/ml for GML) by this
        to get SUVbw (g/ml). For series whose factor varies per instance, the first one.
    units : str
        Units (0054,1001) as found: ``"BQML"``, ``"CNTS"``, ``"GML"`` (or ``"BQML"`` for
        overrides).
    scan_time, injection_time : datetime or None
        Times used for decay correction (None where not needed, e.g. GML or Philips SUV scale).
    decay_correction : str or None
        DecayCorrection (0054,1102): ``"START"`` or ``"ADMIN"``.
    notes : tuple of str
        Choices made that a reader should know (which times were used, fixes applied).
    per_instance : tuple of float or None
        One factor per instance, in the order the instances were given, when they differ
        (Philips per-slice SUV scale factors); None when every instance shares ``factor``.
    weight_kg, dose_bq, half_life_s : float or None
        The values used.
    source : str
        One phrase naming where the factor came from, for ``StudyMeta.suv_source``.
    """

    factor: float
    units: str
    scan_time: dt.datetime | None
    injection_time: dt.datetime | None
    decay_correction: str | None
    notes: tuple[str, ...] = ()
    per_instance: tuple[float, ...] | None = None
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    source: str = ""

    @property
    def uptake_s(self) -> float | None:
        """Seconds from injection to scan start, where both are known."""
        if self.scan_time is None or self.injection_time is None:
            return None
        return (self.scan_time - self.injection_time).total_seconds()

    def factor_for(self, index: int) -> float:
        """Factor of instance ``index`` (in the order the instances were given)."""
        return self.per_instance[index] if self.per_instance else self.factor

    def describe(self) -> str:
        """A human summary: factor, units, times, uptake."""
        parts = [f"SUVbw factor {self.factor:.6g}", f"Units {self.units}"]
        if self.decay_correction:
            parts.append(f"DecayCorrection {self.decay_correction}")
        if self.scan_time:
            parts.append(f"scan time {self.scan_time.isoformat(sep=' ')}")
        if self.injection_time:
            parts.append(f"injection time {self.injection_time.isoformat(sep=' ')}")
        if self.uptake_s is not None:
            parts.append(f"uptake {self.uptake_s / 60:.1f} min")
        if self.weight_kg is not None:
            parts.append(f"weight {self.weight_kg:g} kg")
        if self.dose_bq is not None:
            parts.append(f"dose {self.dose_bq / 1e6:.1f} MBq")
        if self.half_life_s is not None:
            parts.append(f"half-life {self.half_life_s:g} s")
        return ", ".join(parts)


@dataclass(frozen=True)
class SUVOverride:
    """Explicit SUV inputs for PET without usable headers (or to replace header values).

    Any field left None is taken from the DICOM header (DICOM PET) or, for image files,
    must not be needed.

    Attributes
    ----------
    weight_kg : float or None
        Patient weight in kg.
    dose_bq : float or None
        Injected activity in Bq at injection time (use :meth:`from_mbq` for MBq).
    injection_time : datetime, time or None
        Injection time; a time of day is placed on the scan date (midnight aware).
    scan_time : datetime, time or None
        Scan start time, for image files that carry none. With image files, give both
        times or neither (then ``dose_bq`` is taken as the activity at scan start).
    half_life_s : float or None
        Radionuclide half-life in s (default: the header's, or F-18 for image files).
    """

    weight_kg: float | None = None
    dose_bq: float | None = None
    injection_time: dt.datetime | dt.time | None = None
    scan_time: dt.datetime | dt.time | None = None
    half_life_s: float | None = None

    def __post_init__(self):
        if self.weight_kg is not None:
            _check_weight(float(self.weight_kg), "--weight")
        if self.dose_bq is not None:
            _check_dose(float(self.dose_bq), "--dose")

    @classmethod
    def from_mbq(cls, weight_kg: float | None, dose_mbq: float | None,
                 injection_time: dt.datetime | dt.time | str | None = None,
                 scan_time: dt.datetime | dt.time | str | None = None,
                 half_life_s: float | None = None) -> SUVOverride:
        """Build from a dose in MBq (what scanners and request forms show)."""
        return cls(
            weight_kg=None if weight_kg is None else float(weight_kg),
            dose_bq=None if dose_mbq is None else mbq_to_bq(dose_mbq),
            injection_time=_clock(injection_time, "--injection-time"),
            scan_time=_clock(scan_time, "--scan-time"),
            half_life_s=half_life_s,
        )

    @classmethod
    def from_cli(cls, weight_kg: float | None, dose_mbq: float | None,
                 injection_time: str | None, scan_time: str | None = None) -> SUVOverride:
        """Build from command-line values (dose in MBq, times as HHMMSS or ISO datetime)."""
        return cls.from_mbq(weight_kg, dose_mbq, injection_time, scan_time)

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.weight_kg, self.dose_bq, self.injection_time,
                                       self.scan_time, self.half_life_s))


def mbq_to_bq(dose_mbq: float) -> float:
    """Megabecquerel to becquerel; refuses values that are clearly already in Bq."""
    value = float(dose_mbq)
    if value > 1.0e5:
        raise UsageError(f"dose {value:g} MBq is implausible (looks like Bq already)",
                         hint="give the dose in MBq, e.g. --dose 350")
    return value * 1.0e6


def _clock(value, what: str) -> dt.datetime | dt.time | None:
    if value is None or isinstance(value, dt.datetime | dt.time):
        return value
    text = str(value).strip()
    parsed = parse_dicom_datetime(text) if len(re.sub(r"\D", "", text)) > 8 else None
    if parsed is None:
        parsed = parse_dicom_time(text)
    if parsed is None:
        raise UsageError(f"{what} {text!r} is not a time",
                         hint="use HHMMSS, HH:MM:SS or an ISO datetime such as 2024-05-01T09:30")
    return parsed


# --------------------------------------------------------------------------- header access


class _Header:
    """Uniform keyword access to a pydicom Dataset, a keyword dict or a DICOM JSON dict."""

    def __init__(self, source: Any):
        if isinstance(source, Mapping) and source and all(
                re.fullmatch(r"[0-9A-Fa-f]{8}", str(k)) for k in source):
            import pydicom

            source = pydicom.Dataset.from_json(dict(source))
        self.src = source
        self.is_dataset = not isinstance(source, Mapping)

    def get(self, keyword: str) -> Any:
        value = self._direct(self.src, keyword)
        if value is None and keyword in _RADIOPHARM_KEYS:
            seq = self._direct(self.src, "RadiopharmaceuticalInformationSequence")
            if seq:
                value = self._direct(seq[0], keyword)
        return _plain(value)

    @staticmethod
    def _direct(obj: Any, keyword: str) -> Any:
        if isinstance(obj, Mapping):
            return obj.get(keyword)
        try:
            return obj.get(keyword)
        except Exception:  # malformed element in a real file: treat as absent
            return None

    def private(self, group: int, element: int, creator: str, dict_group: str,
                dict_key: str) -> Any:
        """A private element by (group, element offset) under ``creator``."""
        if not self.is_dataset:
            sub = self.src.get(dict_group) or {}
            return _plain(sub.get(dict_key)) if isinstance(sub, Mapping) else None
        ds = self.src
        try:
            block = ds.private_block(group, creator)
            elem = block[element & 0xFF] if (element & 0xFF) in block else None
        except (KeyError, ValueError):
            elem = None
        if elem is None and ((group << 16) | (element >> 8)) not in ds:
            # Some exports drop the private creator but keep the element at its usual offset;
            # with another creator in that block the element would mean something else.
            tag = (group << 16) | element
            elem = ds.get(tag) if tag in ds else None
        return _plain(elem.value) if elem is not None else None


def _plain(value: Any) -> Any:
    """pydicom MultiValue/DSfloat/PersonName -> plain Python values."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii", "ignore").strip("\x00 ")
        except Exception:
            return None
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [_plain(v) for v in value]
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = value[0] if value else None
        if value is None:
            return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------- date/time parsing


def parse_dicom_date(value: Any) -> dt.date | None:
    """DA ``YYYYMMDD`` (also ``YYYY-MM-DD`` / ``YYYY.MM.DD`` from old exports)."""
    text = _text(value)
    if not text:
        return None
    digits = re.sub(r"[-.]", "", text)
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def parse_dicom_time(value: Any) -> dt.time | None:
    """TM ``HHMMSS.FFFFFF`` (also ``HHMM``, ``HH``, or ``HH:MM:SS`` from ACR-NEMA)."""
    text = _text(value)
    if not text:
        return None
    text = text.replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        return dt.time(int(hh), int(mm or 0), int(ss or 0),
                       int((frac or "0").ljust(6, "0")[:6]))
    except ValueError:
        return None


def parse_dicom_datetime(value: Any) -> dt.datetime | None:
    """DT ``YYYYMMDDHHMMSS.FFFFFF&ZZXX`` (UTC offset ignored: all times of a study share it)
    or an ISO 8601 datetime."""
    text = _text(value)
    if not text:
        return None
    text = text.strip()
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?", text)
    if m:
        day = parse_dicom_date(m.group(1))
        clock = parse_dicom_time(m.group(2)) if m.group(2) else dt.time(0)
        if day is None or clock is None:
            return None
        return dt.datetime.combine(day, clock)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)


def _combine(date_value: Any, time_value: Any) -> dt.datetime | None:
    day = parse_dicom_date(date_value)
    clock = parse_dicom_time(time_value)
    if day is None or clock is None:
        return None
    return dt.datetime.combine(day, clock)


# --------------------------------------------------------------------------- checks


def _check_weight(weight_kg: float, where: str) -> None:
    lo, hi = WEIGHT_RANGE_KG
    if weight_kg <= 0:
        raise SUVError(f"{where} is {weight_kg:g}: a patient weight is needed for SUV",
                       hint="give the weight in kg with --weight KG")
    if weight_kg > 1000:
        raise SUVError(f"{where} is {weight_kg:g}, implausible in kg (looks like grams)",
                       hint="give the weight in kg with --weight KG")
    if not lo <= weight_kg <= hi:
        raise SUVError(f"{where} is {weight_kg:g} kg, outside the plausible {lo:g}-{hi:g} kg",
                       hint="check the weight or give it with --weight KG")


def _check_dose(dose_bq: float, where: str) -> None:
    lo, hi = DOSE_RANGE_BQ
    if dose_bq <= 0:
        raise SUVError(f"{where} is {dose_bq:g}: an injected dose is needed for SUV",
                       hint="give the dose in MBq with --dose MBQ")
    if dose_bq < lo:
        raise SUVError(f"{where} is {dose_bq:g} Bq, implausibly small (looks like MBq or mCi)",
                       hint="the dose must be in Bq in DICOM; give it in MBq with --dose MBQ")
    if dose_bq > hi:
        raise SUVError(f"{where} is {dose_bq:g} Bq, implausibly large",
                       hint="check the dose or give it in MBq with --dose MBQ")


# --------------------------------------------------------------------------- the factor


def suv_factor(header: Any | Sequence[Any], override: SUVOverride | None = None) -> SUVFactor:
    """SUVbw factor of a PET series from its DICOM header fields (pure, no file access).

    Parameters
    ----------
    header : pydicom.Dataset or dict, or a sequence of them
        One instance, or all instances of one series (the earliest acquisition time over all
        of them is used for the scan-time rule). Dicts use DICOM keywords
        (``"PatientWeight"``...); Philips private values may sit under
        ``"PhilipsPETPrivateGroup": {"SUVScaleFactor", "ActivityConcentrationScaleFactor"}``,
        the GE private scan datetime under ``"GEPrivateScanDateTime"``. DICOM JSON model
        dicts (``{"00101030": {"vr": "DS", "Value": [70]}}``) work too.
    override : SUVOverride, optional
        Values that replace the header's (weight, dose, injection time, half-life).

    Returns
    -------
    SUVFactor
        ``SUVbw = (stored x RescaleSlope + RescaleIntercept) x factor``.

    Raises
    ------
    SUVError
        Units or decay correction not supported, image not attenuation/decay corrected, or a
        needed value missing or implausible (the message names the DICOM tag).
    """
    if isinstance(header, Mapping) or not isinstance(header, Sequence):
        headers = [header]
    else:
        headers = list(header)
    if not headers:
        raise SUVError("no PET header given")
    hs = [_Header(h) for h in headers]
    first = hs[0]
    override = override or SUVOverride()
    notes: list[str] = []

    corrected = first.get("CorrectedImage")
    corrected = [c.strip().upper() for c in (corrected if isinstance(corrected, list)
                                             else str(corrected or "").split("\\")) if c]
    missing_corr = [c for c in ("ATTN", "DECY") if c not in corrected]
    if missing_corr:
        found = "/".join(corrected) if corrected else "nothing"
        raise SUVError(
            f"{tag_name('CorrectedImage')} lists {found}, without {' and '.join(missing_corr)}: "
            "the PET is not attenuation and decay corrected, so SUV is meaningless",
            hint="use the attenuation-corrected PET series")

    units = (_text(first.get("Units")) or "").upper()
    if not units:
        raise SUVError(f"{tag_name('Units')} is missing: cannot tell Bq/ml from counts or SUV")

    if units == "GML":
        return SUVFactor(1.0, units, None, None, _text(first.get("DecayCorrection")),
                         ("values already SUVbw (Units GML)",),
                         source="DICOM header (Units GML, already SUV)")

    activity_scale: list[float] | None = None
    if units == "CNTS":
        suv_scales = [_number(h.private(0x7053, 0x1000, PHILIPS_CREATOR,
                                        "PhilipsPETPrivateGroup", "SUVScaleFactor")) for h in hs]
        if all(s is not None and s > 0 for s in suv_scales) and override.empty:
            per = tuple(float(s) for s in suv_scales)
            notes.append("Philips private SUV scale factor (7053,1000) used")
            return SUVFactor(per[0], units, None, None, _text(first.get("DecayCorrection")),
                             tuple(notes), per if len(set(per)) > 1 else None,
                             source="DICOM header (Units CNTS, Philips SUV scale factor "
                                    "(7053,1000))")
        acs = [_number(h.private(0x7053, 0x1009, PHILIPS_CREATOR, "PhilipsPETPrivateGroup",
                                 "ActivityConcentrationScaleFactor")) for h in hs]
        if not all(a is not None and a > 0 for a in acs):
            raise SUVError(
                "Units CNTS without the Philips private scale factors "
                f"{tag_name('SUVScaleFactor')} or {tag_name('ActivityConcentrationScaleFactor')}: "
                "counts cannot be turned into Bq/ml",
                hint="export the PET in Bq/ml (BQML) or SUV from the scanner")
        activity_scale = [float(a) for a in acs]
        notes.append("Philips activity concentration scale factor (7053,1009) turns counts "
                     "into Bq/ml")
    elif units != "BQML":
        raise SUVError(f"{tag_name('Units')} is {units!r}; only BQML, CNTS (Philips) and GML "
                       "can be turned into SUV",
                       hint="use the attenuation-corrected PET series in Bq/ml")

    decay = (_text(first.get("DecayCorrection")) or "").upper()
    if decay not in ("START", "ADMIN"):
        raise SUVError(f"{tag_name('DecayCorrection')} is {decay or 'missing'!r}; "
                       "only START and ADMIN are supported",
                       hint="use a series decay-corrected to scan start")

    # Weight
    if override.weight_kg is not None:
        weight = float(override.weight_kg)
        notes.append(f"weight {weight:g} kg given explicitly")
    else:
        weight = _number(first.get("PatientWeight"))
        if weight is None or weight == 0:
            raise SUVError(f"{tag_name('PatientWeight')} is missing or 0",
                           hint="give the weight with --weight KG")
    _check_weight(weight, "weight" if override.weight_kg is not None
                  else tag_name("PatientWeight"))

    # Dose
    if override.dose_bq is not None:
        dose = float(override.dose_bq)
        notes.append(f"dose {dose / 1e6:g} MBq given explicitly")
    else:
        dose = _number(first.get("RadionuclideTotalDose"))
        if dose is None or dose == 0:
            raise SUVError(f"{tag_name('RadionuclideTotalDose')} is missing or 0",
                           hint="give the injected dose with --dose MBQ")
    _check_dose(dose, "dose" if override.dose_bq is not None
                else tag_name("RadionuclideTotalDose"))

    # Half-life
    half_life = override.half_life_s or _number(first.get("RadionuclideHalfLife"))
    nuclide = f"{first.get('Radiopharmaceutical') or ''} {first.get('RadionuclideCodeSequence')}"
    is_f18 = bool(re.search(r"18F|F-?18|FDG|FLUORODEOXY", nuclide.upper()))
    if half_life is None:
        if is_f18:
            half_life = F18_HALF_LIFE_S
            notes.append(f"{tag_name('RadionuclideHalfLife')} missing; F-18 "
                         f"{F18_HALF_LIFE_S} s used (radiopharmaceutical is F-18)")
        else:
            raise SUVError(f"{tag_name('RadionuclideHalfLife')} is missing and the "
                           "radionuclide is not recorded as F-18",
                           hint="check the radiopharmaceutical information in the header")
    if is_f18 and abs(half_life / F18_HALF_LIFE_S - 1) > 0.01:
        raise SUVError(f"{tag_name('RadionuclideHalfLife')} is {half_life:g} s but the "
                       f"radiopharmaceutical is F-18 ({F18_HALF_LIFE_S} s; minutes given?)",
                       hint="check the header")
    if not HALF_LIFE_RANGE_S[0] <= half_life <= HALF_LIFE_RANGE_S[1]:
        raise SUVError(f"{tag_name('RadionuclideHalfLife')} is {half_life:g}, implausible in "
                       "seconds (F-18 is 6586.2 s)", hint="check the header")

    scan, scan_note = _scan_time(hs)
    if scan_note:
        notes.append(scan_note)
    injection, inj_note = _injection_time(first, scan, override)
    if inj_note:
        notes.append(inj_note)

    if decay == "START":
        if scan is None:
            raise SUVError(f"{tag_name('SeriesDate')}/{tag_name('SeriesTime')} and "
                           f"{tag_name('AcquisitionTime')} are missing: no scan time to "
                           "decay-correct the dose to")
        if injection is None:
            raise SUVError(f"{tag_name('RadiopharmaceuticalStartDateTime')} and "
                           f"{tag_name('RadiopharmaceuticalStartTime')} are missing",
                           hint="give the injection time with --injection-time HHMMSS")
        uptake = (scan - injection).total_seconds()
        if uptake < 0:
            raise SUVError(
                f"scan time {scan.isoformat(sep=' ')} is {-uptake / 60:.0f} min before the "
                f"injection time {injection.isoformat(sep=' ')} (clocks not synchronised?)",
                hint="check RadiopharmaceuticalStartTime or give --injection-time HHMMSS")
        if uptake > MAX_UPTAKE_S:
            raise SUVError(
                f"uptake time {uptake / 3600:.1f} h (injection {injection.isoformat(sep=' ')}, "
                f"scan {scan.isoformat(sep=' ')}) is implausible",
                hint="check the injection date/time or give --injection-time HHMMSS")
        if not USUAL_UPTAKE_S[0] <= uptake <= USUAL_UPTAKE_S[1]:
            notes.append(f"uptake time {uptake / 60:.0f} min is outside the usual 45-90 min; "
                         "SUVs are less comparable to reference values")
        decayed = dose * 2.0 ** (-uptake / half_life)
    else:
        decayed = dose
        notes.append("DecayCorrection ADMIN: images already decay-corrected to injection")

    base = weight * 1000.0 / decayed
    if activity_scale is not None:
        per = tuple(base * a for a in activity_scale)
        factor, per_instance = per[0], (per if len(set(per)) > 1 else None)
    else:
        factor, per_instance = base, None
    source = f"DICOM header (Units {units}, DecayCorrection {decay})"
    if not override.empty:
        source += "; override: " + ", ".join(
            name for name, v in (("weight", override.weight_kg), ("dose", override.dose_bq),
                                 ("injection time", override.injection_time),
                                 ("half-life", override.half_life_s)) if v is not None)
    return SUVFactor(factor, units, scan, injection, decay, tuple(notes), per_instance,
                     weight, dose, half_life, source)


def _scan_time(hs: list[_Header]) -> tuple[dt.datetime | None, str | None]:
    """Scan start per the QIBA rule (see module docstring)."""
    first = hs[0]
    series = _combine(first.get("SeriesDate"), first.get("SeriesTime"))
    acquisitions = []
    for h in hs:
        acq = parse_dicom_datetime(h.get("AcquisitionDateTime"))
        if acq is None:
            acq = _combine(h.get("AcquisitionDate") or h.get("SeriesDate"), h.get("AcquisitionTime"))
        if acq is not None:
            acquisitions.append(acq)
    earliest = min(acquisitions) if acquisitions else None
    if series is not None and (earliest is None or series <= earliest):
        return series, None
    ge = first.private(0x0009, 0x100D, GE_CREATOR, "GEPrivateScanDateTime", "")
    if ge is None and not first.is_dataset:
        ge = first.get("GEPrivateScanDateTime") or first.get("GEPrivatePostInjectionDateTime")
    ge_time = parse_dicom_datetime(ge)
    if series is not None and ge_time is not None:
        return ge_time, "SeriesTime later than the first acquisition: GE private scan " \
                        "datetime (0009,100D) used as scan time"
    if earliest is not None:
        if series is None:
            return earliest, "SeriesDate/SeriesTime missing: earliest AcquisitionTime used"
        return earliest, ("SeriesTime later than the earliest AcquisitionTime (post-processed "
                          "series): earliest acquisition used as scan time")
    return None, None


def _injection_time(first: _Header, scan: dt.datetime | None,
                    override: SUVOverride) -> tuple[dt.datetime | None, str | None]:
    if override.injection_time is not None:
        value, origin = override.injection_time, "given explicitly"
    else:
        full = parse_dicom_datetime(first.get("RadiopharmaceuticalStartDateTime"))
        if full is not None:
            return full, None
        value = parse_dicom_time(first.get("RadiopharmaceuticalStartTime"))
        origin = f"from {tag_name('RadiopharmaceuticalStartTime')}"
        if value is None:
            return None, None
    if isinstance(value, dt.datetime):
        return value, f"injection time {origin}"
    if scan is None:
        return None, None
    injection = dt.datetime.combine(scan.date(), value)
    note = None if origin.startswith("from") else f"injection time {origin}"
    if injection > scan and injection - dt.timedelta(days=1) >= scan - dt.timedelta(
            seconds=MAX_UPTAKE_S):
        injection -= dt.timedelta(days=1)
        note = (f"injection time {origin} is after the scan time of day: injected the day "
                "before (scan after midnight)")
    return injection, note
