"""Every text that explains an algorithm or a parameter, in one table.

`DespeckNetAlgorithm` reads it: the group, tags, short description and README section of
each algorithm, and the help of each parameter when it is added (shown as the tooltip in
the dialog, and listed by `qgis_process help`). Defaults, ranges and enum names are not
written here: the base class states them from the parameter's own definition, which the
algorithms build from core/defaults.py, so the help cannot drift from what is checked.

A parameter's help is looked up in ALGORITHM_PARAMETER_HELP[algorithm name] first, then in
PARAMETER_HELP; a new parameter needs an entry in one of them (tests/test_discoverability.py).
"""
import configparser
import os
from dataclasses import dataclass


def _project_url() -> str:
    """The project's home on the web, from metadata.txt (the one place QGIS's plugin manager reads it too)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "metadata.txt"), encoding="utf-8")
    return parser.get("general", "repository", fallback="https://github.com/despecknet/despecknet_qgis").rstrip("/")


PROJECT_URL = _project_url()
README_URL = f"{PROJECT_URL}/blob/main/README.md"

# Groups of the Processing toolbox: group id -> displayed name.
GROUPS = {
    "despeckling": "Despeckling",
    "training": "Training",
    "assessment": "Assessment",
}

# Words SAR users type into the toolbox search; every algorithm gets them, beside its own.
COMMON_TAGS = ("SAR", "radar", "speckle", "despeckle", "despeckling", "speckle filter", "deSpeckNet", "Sentinel-1",
               "sentinel", "sigma0", "backscatter", "deep learning")


@dataclass(frozen=True)
class AlgorithmHelp:
    group_id: str  # a key of GROUPS
    short_description: str
    tags: tuple  # beside COMMON_TAGS
    readme_anchor: str  # the anchor of the algorithm's section in README.md (GitHub's heading slug)


ALGORITHMS = {
    "despeckle": AlgorithmHelp(
        "despeckling", "Removes speckle from a SAR image with a deSpeckNet CNN (bundled or your own ONNX model).",
        ("denoise", "noise reduction", "filter", "CNN", "ONNX", "intensity", "amplitude", "decibel", "GRD"),
        "despeckle-a-sar-image"),
    "despecklebatch": AlgorithmHelp(
        "despeckling", "Despeckles many SAR images (a folder, a list or layers) with one model, locally or on Dask.",
        ("denoise", "batch", "folder", "many", "Dask", "cluster", "time series"),
        "despeckle-many-images"),
    "classicfilter": AlgorithmHelp(
        "despeckling", "Classic speckle filters (boxcar, Lee, refined Lee, Lee sigma, Gamma-MAP, Frost, Kuan) to compare "
                       "with the deep result.",
        ("Lee", "refined Lee", "Lee sigma", "Frost", "Gamma-MAP", "Kuan", "boxcar", "mean filter", "denoise",
         "adaptive filter", "SNAP"),
        "classic-speckle-filters"),
    "temporallabel": AlgorithmHelp(
        "training", "Builds a clean reference label from a stack of co-registered dates, for training.",
        ("temporal average", "multitemporal", "time series", "label", "reference", "change detection", "omnibus",
         "training data"),
        "temporal-reference-label"),
    "train": AlgorithmHelp(
        "training", "Trains deSpeckNet on image and label pairs (phase 1, supervised); writes an ONNX model.",
        ("training", "train", "model", "CNN", "PyTorch", "ONNX", "supervised"),
        "train-a-model"),
    "finetune": AlgorithmHelp(
        "training", "Adapts a deSpeckNet model to one image without any reference (phase 2) and despeckles it.",
        ("fine-tune", "finetune", "adaptation", "unsupervised", "training", "model", "denoise", "PyTorch", "ONNX"),
        "fine-tune-on-an-image"),
    "specklestats": AlgorithmHelp(
        "assessment", "ENL and coefficient of variation of rasters inside homogeneous polygons, with an HTML report.",
        ("ENL", "equivalent number of looks", "Cx", "coefficient of variation", "statistics", "homogeneous area",
         "looks", "quality", "Gamma"),
        "speckle-statistics"),
    "quality": AlgorithmHelp(
        "assessment", "Despeckling quality: PSNR, SSIM, gain, edge preservation and ratio-image statistics.",
        ("PSNR", "SSIM", "EPI", "ratio image", "quality", "metrics", "assessment", "edge preservation",
         "benchmark"),
        "quality-metrics"),
}

_DOMAIN = ("What the raster's values are: intensity (linear power: sigma0, beta0, gamma0 or DN², any calibration "
           "scale), amplitude (square root of intensity) or decibel (10·log10 of intensity).")
_DEVICE = ("Where the network runs: auto (an NVIDIA GPU when ONNX Runtime's GPU package can use one, else the CPU), "
           "cpu, or cuda (fails with a message rather than falling back to the CPU).")
_ONNX_MODEL = ("A deSpeckNet model in ONNX, as written by Train or Fine-tune; empty: the bundled models (trained on "
               "simulated speckle and real Sentinel-1 dates, see their model card): the multi-look one for a band "
               "whose estimated number of looks is 3 or more (GRD), the general one otherwise.")
_TILE = ("Side of the square tiles the image is processed in. The result does not depend on it; memory does (about "
         "0.8 KB per pixel of a tile with its margins, twice that with the speckle output), and a tile that would "
         "take more than half the available memory is refused.")
_POINT_TARGETS = ("Keep bright point targets (ships, buildings, corner reflectors) at their measured value where "
                  "they are brighter than speckle explains; the network alone shrinks them. Off: the network's "
                  "output as it is.")
_LOSS_WEIGHTS = "Loss weights of training: "

# Help shared by every algorithm that has the parameter.
PARAMETER_HELP = {
    "INPUT": "The SAR raster: a GeoTIFF or any raster GDAL reads, a GDAL name (/vsizip/…), or a Sentinel-1 GRD "
             "product (.zip, .SAFE folder or manifest.safe), which is calibrated to sigma0 first.",
    "INPUTS": "The SAR rasters: files, layers, GDAL names or Sentinel-1 GRD products.",
    "BAND": "The band read from each raster (1 is the first).",
    "INPUT_DOMAIN": _DOMAIN,
    "DEVICE": _DEVICE,
    "PRECISION": ("How the network computes on the CPU: auto (bf16 on a CPU with AMX-BF16 units, such as Intel Xeon "
                  "from the 4th generation, when PyTorch is installed; else fp32), fp32 (ONNX Runtime, float32) or "
                  "bf16 (PyTorch on the AMX units: 4.7 times faster in make bench, within 0.01 dB of fp32 in make "
                  "bench-quality, see the model card; fails with a message where it cannot run). On a GPU the network runs "
                  "in fp32."),
    "SELF_ENSEMBLE": ("Run the network on the image and on its three mirrored copies (left-right, up-down, both) "
                      "and average: four times the network's time for a cleaner result (measured +0.15 to +0.3 dB "
                      "PSNR on simulated scenes, a few hundredths on real dates; see the model card)."),
    "MODEL": _ONNX_MODEL,
    "TILE_SIZE": _TILE,
    "OVERLAP": ("Margin read around each tile so that no seam shows; at least the network's receptive radius. "
                "More costs time and changes nothing."),
    "POINT_TARGETS": _POINT_TARGETS,
    "LOOKS": "Equivalent number of looks L of the input; 0 estimates it from the image's flattest areas.",
    # despeckle's and finetune's output choices (output_options.py)
    "ZERO_IS_NODATA": ("Pixels equal to 0 in a band that declares no nodata are nodata: they stay 0 and are "
                       "declared nodata in the output. Sentinel-1 GRD borders are 0 without a declared nodata and "
                       "would make bright halos; a physical intensity or amplitude is never exactly 0. Decibel "
                       "inputs keep their zeros (0 dB is data)."),
    "OUTPUT_DOMAIN": ("The domain the result is written in: the same as the input, intensity, amplitude or "
                      "decibel. A nodata value that is data in the output's domain (0 in decibel) becomes NaN."),
    "OUTPUT_TYPE": "The data type of the written raster: Float32 or Float64.",
    "EXTENT": ("A processing extent: only the part of the raster inside it is read, despeckled and written "
               "(with the network's margin read around it). Empty: the whole raster."),
    # training
    "EPOCHS": "Passes over all training patches.",
    "PATCH_SIZE": "Side of the square patches cut from the images for training, in pixels.",
    "STRIDE": "Step between the corners of neighbouring patches, in pixels; smaller gives more, overlapping patches.",
    "BATCH_SIZE": "Patches per training step; lower it if memory runs short.",
    "LEARNING_RATE": "Adam's learning rate (of the first stage where the rate decreases in steps).",
    "SEED": "Seed of the random patch order and validation split: the same seed gives the same model.",
    "VALIDATION_FRACTION": "Share of the patches held out to measure the loss on data the model does not learn from.",
    "MU": _LOSS_WEIGHTS + "weight mu of the term on the clean image X̂.",
    "XI": _LOSS_WEIGHTS + "weight xi of the term on the reconstruction Y ≈ X̂·N̂.",
    "LAMBDA_TV": _LOSS_WEIGHTS + "weight lambda of the total variation of X̂ (smoothness); 0: none.",
    "OUTPUT_MODEL": ("The model written, in ONNX (for Despeckle), with its PyTorch checkpoint (.pt, to train or "
                     "fine-tune further) beside it."),
}

# Help of a parameter whose meaning depends on the algorithm: algorithm name -> parameter -> help.
ALGORITHM_PARAMETER_HELP = {
    "despeckle": {
        "BAND": "The bands to despeckle, each on its own; empty: every band.",
        "LOOKS": ("Equivalent number of looks L of the input, for the choice between the bundled models (3 or "
                  "more: the multi-look one) and the point-target test; 0 estimates each band's from its "
                  "flattest areas."),
        "OUTPUT": "The despeckled raster: the input's grid, CRS, nodata, band names and metadata.",
        "OUTPUT_NOISE": ("A raster of the estimated speckle N̂ (mean about 1), in the output's domain (by default "
                         "the input's; dB for a dB output). Needs "
                         "the network's speckle branch: about twice the time."),
    },
    "despecklebatch": {
        "INPUTS": ("SAR rasters to despeckle, each into OUTPUT_FOLDER (beside or instead of INPUT_FOLDER and "
                   "INPUT_LIST)."),
        "INPUT_FOLDER": "A folder whose rasters (GeoTIFF, Sentinel-1 products, …) are all despeckled.",
        "INPUT_LIST": "A text file naming one input a line (paths, Sentinel-1 products or GDAL names; # comments).",
        "SCHEDULER": ("Address of a Dask scheduler (tcp://host:8786) to spread the scenes over a cluster; empty: "
                      "one scene after the other on this machine."),
        "WORKERS": ("Scenes or bands despeckled at once in threads on this machine (with Dask; ONNX Runtime "
                    "shares the cores among them); 0: one per core."),
        "WRITE_NOISE": "Also write each scene's estimated speckle N̂ (about twice the time).",
        "FORCE": ("Despeckle again the scenes whose output is up to date; off: a rerun skips them and retries "
                  "those that failed."),
        "OPTIONS": ("More arguments of the core as NAME=VALUE pairs separated by ';' (e.g. overlap=24); domain, "
                    "tile_size and point_targets come from this algorithm's own parameters."),
        "OUTPUT_FOLDER": "The folder the despeckled rasters and the run's manifest are written to.",
    },
    "classicfilter": {
        "BAND": "The bands to filter, each on its own; empty: every band.",
        "METHOD": ("The filter: boxcar (the local mean), Lee, refined Lee (7x7, edge-aligned windows), Lee sigma "
                   "(improved, 2009), Gamma-MAP, Frost or Kuan."),
        "WINDOW_SIZE": "Side of the moving window in pixels (odd); refined Lee needs 7 (others are refused).",
        "LOOKS": "Equivalent number of looks of the input; 0 estimates it from the image's flattest areas.",
        "DAMPING": "Frost's damping factor K: higher keeps more detail near edges.",
        "SIGMA": "Lee sigma: the probability that a speckled pixel falls inside the sigma range.",
        "TILE_SIZE": "Rows and columns read at once; the result does not depend on it, memory does.",
        "OUTPUT": "The filtered raster: the input's grid, CRS and nodata, in the input's domain.",
    },
    "temporallabel": {
        "INPUTS": ("Co-registered dates of one area in time order: one raster per date, or one multi-band raster "
                   "whose bands are dates."),
        "BAND": "The band read from each raster (ignored for one multi-band raster).",
        "STABILITY": ("How a pixel is found unchanged over the dates. omnibus: the omnibus Gamma change test over "
                      "a small window with a trend test (any units; recommended; catches gradual change). "
                      "speckle_test: temporal variance beyond what L-look speckle gives, per pixel (misses gradual "
                      "change). db_std: standard deviation in dB at most THRESHOLD (any scale). paper: standard "
                      "deviation at most nu in the data's units (only for data scaled as in the paper)."),
        "THRESHOLD": "nu for the paper's rule, dB for the db_std rule; 0: the rule's default.",
        "LOOKS": "Number of looks L of one date, for the speckle and omnibus tests; 0: estimated from the dates.",
        "ALPHA": "Risk of calling a stable pixel changed in the speckle and omnibus tests.",
        "TEST_WINDOW": "Side of the omnibus test's window (odd; 1: per pixel).",
        "MULTILOOK": "Side of the moving average applied to the label (odd; 1: none).",
        "OUTPUT": "The reference label: the temporal mean where the pixel is stable, nodata elsewhere.",
        "OUTPUT_MASK": "A mask of stable pixels (1 stable, 0 changed), a MASK for Train.",
    },
    "train": {
        "INPUT": "Noisy SAR images, each co-registered with its label in REFERENCE (same order).",
        "REFERENCE": "Clean reference labels (e.g. from Temporal reference label), one per image, in the same order.",
        "MASK": "Masks, one per image (1: use the pixel, 0: leave it out), e.g. the stability masks.",
        "BAND": "The band read from every image and label.",
        "LEARNING_RATE_END": "Learning rate of the last stage; the rate falls from LEARNING_RATE to it in steps.",
        "LEARNING_RATE_STEPS": "Stages from the first to the final learning rate (1: a constant rate).",
        "INITIAL_MODEL": ("A PyTorch checkpoint (.pt) training starts from; empty: random weights. The "
                          "NAME.unfinished.pt of a cancelled training, with the same data and settings, goes on "
                          "where it stopped."),
        "DEVICE": ("Where training runs: auto (an NVIDIA GPU when PyTorch can use one, i.e. a CUDA build of torch, "
                   "else the CPU), cpu, or cuda (fails with a message rather than falling back to the CPU)."),
    },
    "finetune": {
        "INPUT": "The image the model adapts to, without any reference; it is then despeckled with the tuned model.",
        "BAND": "The band the model adapts to; empty: 1.",
        "MODEL": ("PyTorch checkpoint (.pt) the tuning starts from, as written beside the .onnx by Train or "
                  "Fine-tune; empty: the bundled model's, the one despeckle chooses for the band's estimated looks "
                  "(multi-look for 3 or more)."),
        "PRESET": ("Loss weights for the kind of image: multilook (e.g. Sentinel-1 GRD), singlelook (e.g. SLC "
                   "intensity), or custom (MU, XI and LAMBDA_TV as given)."),
        "MU": _LOSS_WEIGHTS + "weight mu of the term keeping X̂ near the image itself, MSE(Y, X̂) (custom preset only).",
        "XI": _LOSS_WEIGHTS + "weight xi of the reconstruction Y ≈ X̂·N̂ (custom preset only).",
        "LAMBDA_TV": _LOSS_WEIGHTS + "weight lambda of the total variation of X̂ (custom preset only); 0: none.",
        "LOOKS": ("Number of looks L of the image, for the log-bias correction and for judging the ratio image; "
                  "0: estimated on the band's flattest blocks (the preset's 4.4 or 1 where it cannot be)."),
        "LEARNING_RATE": "Adam's learning rate, constant through the epoch(s).",
        "PATIENCE": "Stop early after this many evaluations without improvement; 0: never stop early.",
        "DEVICE": ("Where tuning and the despeckled output run: auto (an NVIDIA GPU when PyTorch, and ONNX Runtime "
                   "for the output, can use one, else the CPU), cpu, or cuda (fails with a message rather than "
                   "falling back to the CPU)."),
        "OUTPUT": "The image despeckled with the tuned model.",
    },
    "specklestats": {
        "INPUTS": "Rasters to measure, e.g. the original, the despeckled image and the estimated speckle.",
        "POLYGONS": ("Polygons over homogeneous areas (a lake, a uniform field), e.g. drawn with the ENL / Cx map "
                     "tool; reprojected to each raster's CRS."),
        "BAND": "The band measured on each raster; 0 measures every band, a row each (VV and VH side by side).",
        "OUTPUT": ("One feature per polygon, raster and band, with the polygon's geometry (to map ENL and Cx): "
                   "pixels, mean, std, ENL, Cx, the fitted Gamma looks, and the polygon's own attributes."),
        "OUTPUT_HTML": "An HTML report: per polygon, the histogram of intensity and the fitted Gamma law.",
    },
    "quality": {
        "INPUT": "The despeckled raster X̂ to assess.",
        "NOISY": "The noisy original Y it was despeckled from.",
        "REFERENCE": "A clean reference X (e.g. of a simulation): adds PSNR, SSIM and the despeckling gain.",
        "POINTS": "Points on strong scatterers: their contrast to the surroundings is compared.",
        "OUTPUT_RATIO": "The ratio image Y/X̂; pure speckle (mean 1, no structure) for a good filter.",
    },
}


def parameter_help(algorithm: str, parameter: str):
    """The help of `parameter` in `algorithm`, None if the table has none."""
    return ALGORITHM_PARAMETER_HELP.get(algorithm, {}).get(parameter) or PARAMETER_HELP.get(parameter)


# Decimals of a number box whose values can be far below its minimum's scale (QGIS shows 6 otherwise; a box with
# the minimum above 0 gets enough decimals for the minimum, see DespeckNetAlgorithm.addParameter).
DECIMALS = {"LEARNING_RATE": 10, "LEARNING_RATE_END": 10, "LAMBDA_TV": 10, "MU": 8, "XI": 8, "ALPHA": 8}
