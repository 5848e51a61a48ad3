//! Images made in-test, and a crafted PNG header for images too large to make.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use image::{DynamicImage, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};

/// An opaque (RGB) or translucent (RGBA) gradient.
pub(crate) fn picture(width: u32, height: u32, alpha: bool) -> DynamicImage {
    if alpha {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x % 251) as u8, (y % 251) as u8, 90, 160])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 251) as u8, (y % 251) as u8, ((x + y) % 251) as u8])
        }))
    }
}

/// `picture` as a PNG.
pub(crate) fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    picture(width, height, alpha)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// An opaque `picture` as a JPEG.
pub(crate) fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let rgb = picture(width, height, false).to_rgb8();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(&rgb, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// An opaque `picture` as a lossless WebP.
pub(crate) fn webp(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let rgb = picture(width, height, false).to_rgb8();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(&rgb, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A PNG that is only a header claiming `width`×`height` pixels of 16-bit
/// RGBA, and a few bytes of data: what a decompression bomb looks like to
/// a validator that reads headers only.
pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The dimensions of an encoded image.
pub(crate) fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).unwrap();
    (image.width(), image.height())
}

/// The format of an encoded image.
pub(crate) fn format(bytes: &[u8]) -> image::ImageFormat {
    image::guess_format(bytes).unwrap()
}
