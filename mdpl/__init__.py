"""mdpl: prompt learning under missing modalities (MDPL, MAP, DCP) on frozen ViLT and CLIP."""

import warnings

# sacred 0.8.7 imports pkg_resources, which setuptools<81 still ships but warns about (on every import of mdpl).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

__version__ = "0.2.0"
