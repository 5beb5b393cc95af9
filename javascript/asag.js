// ASAG hints. Generated from asag_lib/params.py by `python -m asag_lib.ui`; do not edit by hand.
(function () {
    const hints = {
  "enabled": "Turn Adversarial Sinkhorn Attention Guidance on for this job.",
  "scale": "Guidance strength s in eps + s·(cond − weak). 0 turns the term off (bit-identical to no ASAG). Typical 1–3.",
  "layers": "Self-attention layers to perturb: a preset or a spec like 'middle', 'input.7-8', 'output.0.0-4', 'm0', 'u0,u1'.",
  "iterations": "Maximum Sinkhorn iterations per layer; the paper uses about 2.",
  "tolerance": "Stop iterating once every row of the plan sums to 1 within this tolerance; 0 always runs all iterations.",
  "start": "Fraction of sampling at which guidance starts (0 = first step).",
  "end": "Fraction of sampling at which guidance ends (1 = last step).",
  "hires": "Which sampling passes get ASAG when Hires. fix is on.",
  "rescale": "CFG-rescale-style correction of the guided prediction's standard deviation towards the cond prediction (0 = off).",
  "plan": "'rows': output n·P·V, rows of the plan sum to 1 (this project's reading of the paper). 'raw': P·V as in the unofficial implementation (output shrunk about n-fold, which nearly deletes the layer).",
  "weak_pass": "How the extra weak prediction is computed: 'separate' UNet call on the cond rows, 'batched' into the main call where safe, or 'auto'.",
  "weak_model": "What the weak prediction perturbs the layers with: 'asag' (adversarial Sinkhorn plan), 'similarity' (Sinkhorn with the ordinary cost), 'random' (Sinkhorn on a seeded random cost), 'uniform' (every query gets the mean of V), 'identity' (PAG: output = V) or 'blur' (SEG: queries blurred over the token grid).",
  "blur_sigma": "Gaussian sigma (in tokens) of the 'blur' weak model; 10000 (or 'inf') means infinite: every query becomes the mean query.",
  "telemetry": "Collect the Sinkhorn plan's statistics per layer (normalised row entropy, marginal error, iterations) and report them: console table, infotext, JSON next to saved images. Does not change the image."
};

    function applyHints() {
        const app = typeof gradioApp === "function" ? gradioApp() : document;
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, hint] of Object.entries(hints)) {
                // Script.elem_id() names controls script_<tab>_<title>_<name>.
                const el = app.querySelector(`#script_${tab}_asag_${name}`);
                if (el && !el.title) {
                    el.title = hint;
                }
            }
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(applyHints);
    } else {
        document.addEventListener("DOMContentLoaded", applyHints);
    }
})();
