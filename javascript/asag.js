// ASAG hints. Generated from asag_lib/params.py by `python -m asag_lib.ui`; do not edit by hand.
// Each hint goes on the control's own label (where A1111's hints.js puts its tooltips), the enable hint
// on the accordion header's checkbox only, so hovering one control never shows another's hint.
(function () {
    const hints = {
  "enabled": "Turn Adversarial Sinkhorn Attention Guidance on for this job.",
  "scale": "Guidance strength s in eps + s·(cond − weak). 0 turns the term off (bit-identical to no ASAG). Typical 1–3.",
  "layers": "Self-attention layers to perturb: a preset or a spec like 'middle', 'input.7-8', 'output.0.0-4', 'm0', 'u0,u1'.",
  "iterations": "Maximum Sinkhorn iterations per layer; the paper uses about 2.",
  "tolerance": "Stop iterating once every row of the plan sums to 1 within this tolerance; 0 always runs all iterations.",
  "start": "Fraction of the pass's sampling steps: step i of N is guided from i/N >= start (0 = first step).",
  "end": "Fraction of the pass's sampling steps: step i of N is guided while i/N < end (1 = up to the last step).",
  "hires": "Which sampling passes get ASAG when Hires. fix is on.",
  "rescale": "Shrink the ASAG term so the guided prediction's standard deviation moves towards the cond prediction's (in eps space; CFG itself is untouched; 0 = off).",
  "plan": "'rows': output n·P·V, rows of the plan sum to 1 (this project's reading of the paper). 'raw': P·V as in the unofficial implementation (output shrunk about n-fold, which nearly deletes the layer).",
  "weak_pass": "How the extra weak prediction is computed: 'separate' UNet call on the cond rows, 'batched' into the main call where safe, or 'auto'.",
  "weak_model": "What the weak prediction perturbs the layers with: 'asag' (adversarial Sinkhorn plan), 'similarity' (Sinkhorn with the ordinary cost), 'random' (Sinkhorn on a seeded random cost), 'uniform' (every query gets the mean of V), 'identity' (PAG: output = V) or 'blur' (SEG: queries blurred over the token grid).",
  "blur_sigma": "Gaussian sigma (in tokens) of the 'blur' weak model; 10000 (or 'inf') means infinite: every query becomes the mean query.",
  "telemetry": "Collect the Sinkhorn plan's statistics per layer (normalised row entropy, marginal error, iterations) and report them: console table, infotext, JSON next to saved images. Does not change the image.",
  "joint": "Transformer models with joint text+image attention (Flux, Chroma): 'image' puts the adversarial plan on the image-image block and keeps each image token's attention to text as softmax gives it; 'full' puts it on the whole joint matrix. UNet models ignore it."
};

    function labelOf(root) {
        return root.querySelector("[data-testid='block-info']") || root.querySelector("label") || root;
    }

    function applyHints() {
        const app = typeof gradioApp === "function" ? gradioApp() : document;
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, hint] of Object.entries(hints)) {
                // Script.elem_id() names controls script_<tab>_<title>_<name>.
                const id = `script_${tab}_asag_${name}`;
                const root = app.querySelector(`#${id}`);
                if (!root) {
                    continue;
                }
                if (name === "enabled") {
                    // InputAccordion: the header's visible checkbox and its label text
                    const box = app.querySelector(`#${id}-visible-checkbox`);
                    for (const el of [box, box && box.parentElement]) {
                        if (el) {
                            el.title = hint;
                        }
                    }
                    continue;
                }
                labelOf(root).title = hint;
            }
        }
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(applyHints);
    } else {
        document.addEventListener("DOMContentLoaded", applyHints);
    }
})();
