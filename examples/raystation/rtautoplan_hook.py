"""RayStation script: plan the open case with rtautoplan through its TPS hook (autonomous or suggest mode).

Written against the RayStation scripting API (``connect``: ``get_current``, ``Case.ScriptableDicomExport``,
``PatientDB.QueryStudiesFromPath`` / ``QuerySeriesFromPath``, ``Patient.ImportDataFromPath``; RayStation
11B+ CPython 3 scripting, as documented in the RayStation Scripting Guideline). It cannot run outside
RayStation; ``tests/test_tps_examples.py`` replays the exact JSON it sends and parses.

1. export the current examination and its structure set as DICOM to a work folder;
2. start ``rtautoplan hook`` and send one request per line (JSON Lines, ``docs/hook.schema.json``):
   autonomous: one request, one response; suggest: open a session, show each step's suggestions to
   the user, send the decision (accept / edit / reject), then finish;
3. import the returned RTPLAN / RTDOSE / RTSTRUCT into the patient (the plan arrives UNAPPROVED).
"""

import json
import os
import subprocess
import tempfile

HOOK = os.environ.get("RTAUTOPLAN_HOOK", "rtautoplan")  # the rtautoplan command on this workstation


def autonomous_request(case_dir, out_dir, site=None, max_steps=None):
    """The request of autonomous mode (schema: autonomousRequest)."""
    request = {"case": case_dir, "output": out_dir, "mode": "autonomous"}
    if site is not None:
        request["site"] = site
    if max_steps is not None:
        request["max_steps"] = max_steps
    return request


def suggest_request(case_dir, out_dir, k=3):
    """The request opening a suggest-mode session (schema: suggestRequest)."""
    return {"mode": "suggest", "case": case_dir, "output": out_dir, "k": k}


def decision_request(session, decision, index=0, action=None):
    """A decision on the current suggestions: accept / edit / reject / finish (schema: decisionRequest)."""
    request = {"session": session, "decision": decision}
    if decision in ("accept", "reject", "edit"):
        request["index"] = index
    if action is not None:
        request["action"] = action
    return request


def encode(request):
    """One JSON line, as written to the hook's stdin."""
    return json.dumps(request, ensure_ascii=False) + "\n"


def parse_response(line):
    """(status, payload) of one response line: "ok"/"unacceptable" with the files, "suggest" with the
    session and suggestions, "error" with the message (raised as RuntimeError)."""
    response = json.loads(line)
    status = response["status"]
    if status == "error":
        raise RuntimeError("rtautoplan: " + response["error"])
    if status == "suggest":
        return status, {"session": response["session"], "step": response["step"], "done": response["done"],
                        "flags": response["uncertainty"].get("flags", []),
                        "suggestions": [(s["rank"], s["action"], s["score_delta"], s["accepted"])
                                        for s in response["suggestions"]]}
    return status, {"files": response["files"], "acceptable": response["acceptable"],
                    "reasons": response["reasons"], "final": response["score"]["final"]}


class Hook:
    """``rtautoplan hook`` as a child process: one request line in, one response line out."""

    def __init__(self):
        self.process = subprocess.Popen([HOOK, "hook"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        universal_newlines=True, encoding="utf-8")

    def ask(self, request):
        self.process.stdin.write(encode(request))
        self.process.stdin.flush()
        return parse_response(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def export_current(folder):
    """The current examination and its structure set as DICOM in ``folder`` (RayStation API)."""
    from connect import get_current

    case, examination = get_current("Case"), get_current("Examination")
    case.ScriptableDicomExport(ExportFolderPath=folder, Examinations=[examination.Name],
                               RtStructureSetsForExaminations=[examination.Name], IgnorePreConditionWarnings=True)


def import_result(folder):
    """Import every series of the plan folder into the current patient and case (RayStation API)."""
    from connect import get_current

    patient, case, patient_db = get_current("Patient"), get_current("Case"), get_current("PatientDB")
    studies = patient_db.QueryStudiesFromPath(Path=folder, SearchCriterias={"PatientID": patient.PatientID})
    series = []
    for study in studies:
        series += patient_db.QuerySeriesFromPath(Path=folder, SearchCriterias=study)
    patient.ImportDataFromPath(Path=folder, SeriesOrInstances=series, CaseName=case.CaseName)
    patient.Save()


def choose(state):
    """The clinician's decision on one step (RayStation's script console: typed in)."""
    for rank, action, delta, accepted in state["suggestions"]:
        print("%d. %s: score change %s%s" % (rank, action, delta, "" if accepted else " (rejected by the filter)"))
    answer = input("accept N / edit ACTION / reject / finish: ").split()
    if not answer or answer[0] == "finish":
        return "finish", 0, None
    if answer[0] == "edit":
        return "edit", 0, answer[1]
    return answer[0], int(answer[1]) - 1 if len(answer) > 1 else 0, None


def main(mode="autonomous"):
    work = tempfile.mkdtemp(prefix="rtautoplan_")
    case_dir, out_dir = os.path.join(work, "case"), os.path.join(work, "plan")
    os.makedirs(case_dir)
    export_current(case_dir)
    hook = Hook()
    try:
        if mode == "autonomous":
            status, result = hook.ask(autonomous_request(case_dir, out_dir))
        else:
            status, state = hook.ask(suggest_request(case_dir, out_dir))
            while status == "suggest" and not state["done"]:
                decision, index, action = choose(state)
                if decision == "finish":
                    break
                status, state = hook.ask(decision_request(state["session"], decision, index, action))
            status, result = hook.ask(decision_request(state["session"], "finish"))
    finally:
        hook.close()
    if not result["acceptable"]:
        print("NOT ACCEPTABLE: " + "; ".join(result["reasons"]))
    import_result(out_dir)
    print("imported %s (UNAPPROVED), score %s" % (result["files"]["plan"], result["final"]))


if __name__ == "__main__":
    main(os.environ.get("RTAUTOPLAN_MODE", "autonomous"))
