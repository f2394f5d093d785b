"""halluscope.data owns pixels on disk and in memory: image folders, video folders (decord,
with a PyAV fallback), and synthetic worlds whose randomness is known. Clips and images
come out as float tensors in [-1, 1]. It also owns the token cache format (written by
tokenizers, read by gpt). It imports nothing else from halluscope except
`errors` and `io`."""

from halluscope.data.folder import MediaFolder
from halluscope.data.images import ImageFolder, load_image
from halluscope.data.media import write_clip_grid, write_image_grid, write_png, write_video
from halluscope.data.token_cache import TokenCache, write_token_cache
from halluscope.data.videos import VideoFolder, load_clip
from halluscope.data.worlds import ImageWorld, VideoWorld, write_world

__all__ = [
    "ImageFolder", "VideoFolder", "MediaFolder", "load_image", "load_clip",
    "ImageWorld", "VideoWorld", "write_world",
    "write_image_grid", "write_clip_grid", "write_png", "write_video",
    "TokenCache", "write_token_cache",
]
