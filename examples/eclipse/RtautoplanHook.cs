// Eclipse (ESAPI) script: plan the open patient with rtautoplan through its TPS hook, autonomous or suggest mode.
//
// Written against the Eclipse Scripting API (VMS.TPS.Common.Model.API: ScriptContext, Patient, StructureSet;
// single-file plug-in script, ESAPI 16+, .NET Framework 4.8). ESAPI has no DICOM export or import call, so the
// case is read from the folder the clinic's Eclipse DICOM export filter writes (EXPORT_ROOT\<patient id>), and
// the returned RTPLAN / RTDOSE / RTSTRUCT are copied to the DICOM import daemon's watch folder (IMPORT_ROOT),
// from where Eclipse imports them (UNAPPROVED). It cannot run here: tests/test_tps_examples.py fills the
// request templates below exactly as Execute does, sends them to the hook and checks every response key read here.
using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Web.Script.Serialization;   // JavaScriptSerializer (System.Web.Extensions.dll)
using System.Windows;
using VMS.TPS.Common.Model.API;

[assembly: ESAPIScript(IsWriteable = false)]

namespace VMS.TPS
{
    public class Script
    {
        // The JSON Lines requests (docs/hook.schema.json 1.1); {0}, {1}: JSON strings of the case and output folders.
        const string AutonomousRequest = "{{\"case\": {0}, \"output\": {1}, \"mode\": \"autonomous\"}}";
        const string SuggestRequest = "{{\"mode\": \"suggest\", \"case\": {0}, \"output\": {1}, \"k\": 3}}";
        // {0}: the session id (JSON string), {1}: the suggestion index.
        const string AcceptRequest = "{{\"session\": {0}, \"decision\": \"accept\", \"index\": {1}}}";
        const string RejectRequest = "{{\"session\": {0}, \"decision\": \"reject\", \"index\": {1}}}";
        const string FinishRequest = "{{\"session\": {0}, \"decision\": \"finish\"}}";

        static readonly JavaScriptSerializer Json = new JavaScriptSerializer();

        public void Execute(ScriptContext context)
        {
            Patient patient = context.Patient;
            if (patient == null || context.StructureSet == null)
                throw new ApplicationException("Open a patient with a structure set first.");
            string exportRoot = Environment.GetEnvironmentVariable("RTAUTOPLAN_EXPORT_ROOT") ?? @"\\tps\dicom\export";
            string importRoot = Environment.GetEnvironmentVariable("RTAUTOPLAN_IMPORT_ROOT") ?? @"\\tps\dicom\import";
            string caseDir = Path.Combine(exportRoot, patient.Id);
            string outDir = Path.Combine(Path.GetTempPath(), "rtautoplan_" + patient.Id + "_" + DateTime.Now.Ticks);
            bool suggest = MessageBox.Show("Review each step (suggest mode)?", "rtautoplan",
                                           MessageBoxButton.YesNo) == MessageBoxResult.Yes;
            Dictionary<string, object> result;
            using (var hook = new Hook())
            {
                if (!suggest)
                {
                    result = hook.Ask(string.Format(AutonomousRequest, Json.Serialize(caseDir), Json.Serialize(outDir)));
                }
                else
                {
                    var state = hook.Ask(string.Format(SuggestRequest, Json.Serialize(caseDir), Json.Serialize(outDir)));
                    string session = (string)state["session"];
                    while (!(bool)state["done"])
                    {
                        var suggestions = (ArrayList)state["suggestions"];
                        if (suggestions.Count == 0) break;
                        var first = (Dictionary<string, object>)suggestions[0];
                        string text = string.Format("Step {0}: {1} (score change {2}). Accept?", state["step"],
                                                    first["action"], first["score_delta"]);
                        var answer = MessageBox.Show(text, "rtautoplan", MessageBoxButton.YesNoCancel);
                        if (answer == MessageBoxResult.Cancel) break;
                        string template = answer == MessageBoxResult.Yes ? AcceptRequest : RejectRequest;
                        state = hook.Ask(string.Format(template, Json.Serialize(session), 0));
                    }
                    result = hook.Ask(string.Format(FinishRequest, Json.Serialize(session)));
                }
            }
            var files = (Dictionary<string, object>)result["files"];
            foreach (string key in new[] { "plan", "rtdose", "rtstruct" })
                File.Copy((string)files[key], Path.Combine(importRoot, Path.GetFileName((string)files[key])), true);
            string verdict = (bool)result["acceptable"] ? "passes the clinical gate"
                : "is NOT ACCEPTABLE: " + string.Join("; ", ((ArrayList)result["reasons"]).ToArray());
            MessageBox.Show("The plan " + verdict + ". It was sent to Eclipse's import folder UNAPPROVED.", "rtautoplan");
        }

        sealed class Hook : IDisposable
        {
            readonly Process process;

            public Hook()
            {
                var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("RTAUTOPLAN_HOOK") ?? "rtautoplan", "hook")
                {
                    UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true,
                    CreateNoWindow = true, StandardOutputEncoding = System.Text.Encoding.UTF8
                };
                process = Process.Start(start);
            }

            public Dictionary<string, object> Ask(string requestLine)
            {
                process.StandardInput.WriteLine(requestLine);
                process.StandardInput.Flush();
                var response = Json.Deserialize<Dictionary<string, object>>(process.StandardOutput.ReadLine());
                if ((string)response["status"] == "error")
                    throw new ApplicationException("rtautoplan: " + response["error"]);
                return response;
            }

            public void Dispose()
            {
                process.StandardInput.Close();
                process.WaitForExit();
            }
        }
    }
}
