//! Making thumbnails: decode (within [`crate::store::MAX_DIMENSION`] and
//! [`crate::store::MAX_DECODE_BYTES`]), turn upright by the EXIF
//! orientation, scale into each size's bounding box (aspect kept, never
//! enlarged) and encode: JPEG, or PNG for images with transparency. Pure
//! CPU work: the reactor runs it on tokio's blocking pool.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::store::{Accepted, limits};

/// A thumbnail size: a name and the square box it fits into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbnailSize {
    /// The name used in keys and events.
    pub name: &'static str,
    /// Longest side in pixels.
    pub max: u32,
}

/// The sizes made for every image, largest first.
pub const SIZES: [ThumbnailSize; 2] = [
    ThumbnailSize {
        name: "medium",
        max: 512,
    },
    ThumbnailSize {
        name: "small",
        max: 128,
    },
];

/// JPEG quality of thumbnails.
pub const JPEG_QUALITY: u8 = 85;

/// One encoded thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Its size.
    pub size: ThumbnailSize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    /// File extension for its key.
    pub extension: &'static str,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// Why an image gets no thumbnails. Permanent: the same bytes fail the
/// same way every time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// Decodes `original` and renders every size in [`SIZES`].
///
/// # Errors
/// The bytes are not a decodable PNG, JPEG or WebP within the limits.
pub fn render(original: &[u8]) -> Result<Vec<Rendered>, Undecodable> {
    let format =
        image::guess_format(original).map_err(|_| Undecodable("not an image".to_owned()))?;
    if Accepted::from_format(format).is_none() {
        return Err(Undecodable(format!(
            "unsupported image format {format:?}: only PNG, JPEG and WebP are accepted"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(original), format);
    reader.limits(limits(true));
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Undecodable(format!("cannot read the image: {e}")))?;
    // A broken EXIF block should not lose the image: keep it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| Undecodable(format!("cannot decode the image: {e}")))?;
    image.apply_orientation(orientation);

    let mut out = Vec::with_capacity(SIZES.len());
    // Each size is scaled from the one before it (largest first): far less
    // work than scaling the original each time, and no visible difference.
    let mut source = image;
    for size in SIZES {
        let scaled = if source.width() <= size.max && source.height() <= size.max {
            source
        } else {
            source.resize(size.max, size.max, FilterType::Triangle)
        };
        out.push(encode(&scaled, size)?);
        source = scaled;
    }
    Ok(out)
}

fn encode(image: &DynamicImage, size: ThumbnailSize) -> Result<Rendered, Undecodable> {
    let mut bytes = Vec::new();
    let (content_type, extension) = if image.color().has_alpha() {
        image
            .to_rgba8()
            .write_with_encoder(PngEncoder::new(&mut bytes))
            .map_err(|e| Undecodable(format!("cannot encode a PNG thumbnail: {e}")))?;
        ("image/png", "png")
    } else {
        image
            .to_rgb8()
            .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))
            .map_err(|e| Undecodable(format!("cannot encode a JPEG thumbnail: {e}")))?;
        ("image/jpeg", "jpg")
    };
    Ok(Rendered {
        size,
        width: image.width(),
        height: image.height(),
        content_type,
        extension,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let image = if alpha {
            DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
                image::Rgba([(x % 256) as u8, (y % 256) as u8, 0, 128])
            }))
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
            }))
        };
        let mut out = Cursor::new(Vec::new());
        let written = image.write_to(&mut out, image::ImageFormat::Png);
        assert!(written.is_ok(), "{written:?}");
        out.into_inner()
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_never_grow() {
        let r = render(&png(1000, 500, false)).unwrap_or_else(|e| panic!("{e}"));
        let dims: Vec<_> = r.iter().map(|t| (t.size.name, t.width, t.height)).collect();
        assert_eq!(dims, [("medium", 512, 256), ("small", 128, 64)]);
        assert!(r.iter().all(|t| t.content_type == "image/jpeg"));

        let r = render(&png(200, 300, true)).unwrap_or_else(|e| panic!("{e}"));
        let dims: Vec<_> = r.iter().map(|t| (t.width, t.height)).collect();
        assert_eq!(
            dims,
            [(200, 300), (85, 128)],
            "a small image is not enlarged"
        );
        assert!(
            r.iter().all(|t| t.content_type == "image/png"),
            "transparency kept"
        );
    }

    #[test]
    fn garbage_is_undecodable_with_a_reason() {
        assert_eq!(render(b"nope"), Err(Undecodable("not an image".into())));
        let mut truncated = png(64, 64, false);
        truncated.truncate(60);
        let e = render(&truncated).err();
        assert!(
            e.is_some_and(|e| e.0.starts_with("cannot")),
            "truncated PNG"
        );
    }
}
