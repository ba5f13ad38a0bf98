# 关注渠道（《私域如何给用户正确高效打标签》：渠道来源标签）
#
# 从微信 user/info 返回的 subscribe_scene（关注的渠道来源）和
# qr_scene_str（扫码关注时二维码的场景值）得出，每人一个。门店的带参
# 二维码用 "store" 开头的场景值（如 storeA、store_gz01）区分于其他二维码。
# 渠道-其他收下其余所有已知取值（公众号迁移、ADD_SCENE_OTHERS，以及微信
# 以后新增的渠道）；subscribe_scene 缺失的粉丝不打渠道标签。

# -- 阈值（可调） --------------------------------------------------------------
let channel_store_prefix = "store"  # 门店二维码场景值的前缀
let channel_article_scenes = ["ADD_SCENE_PROFILE_LINK", "ADD_SCENE_PROFILE_ITEM", "ADD_SCENE_REPRINT"]
let channel_video_scenes = ["ADD_SCENE_LIVESTREAM", "ADD_SCENE_CHANNELS"]
# 上面各标签用到的全部取值；新增一个渠道标签时，把它的取值也加到这里。
let channel_listed_scenes = ["ADD_SCENE_QR_CODE", "ADD_SCENE_SEARCH", "ADD_SCENE_PROFILE_CARD", "ADD_SCENE_PROFILE_LINK", "ADD_SCENE_PROFILE_ITEM", "ADD_SCENE_REPRINT", "ADD_SCENE_WECHAT_ADVERTISEMENT", "ADD_SCENE_PAID", "ADD_SCENE_LIVESTREAM", "ADD_SCENE_CHANNELS"]

group "渠道" exclusive {
  tag "渠道-门店" when subscribe_scene == "ADD_SCENE_QR_CODE"
      and starts_with(qr_scene_str, channel_store_prefix) {
    description "扫门店带参二维码关注"
    priority 30
  }

  tag "渠道-扫码" when subscribe_scene == "ADD_SCENE_QR_CODE"
      and not starts_with(qr_scene_str, channel_store_prefix) {
    description "扫其他二维码关注（海报、物料等）"
    priority 30
  }

  tag "渠道-搜索" when subscribe_scene == "ADD_SCENE_SEARCH" {
    description "搜索公众号关注"
    priority 30
  }

  tag "渠道-名片分享" when subscribe_scene == "ADD_SCENE_PROFILE_CARD" {
    description "好友分享的名片关注"
    priority 30
  }

  tag "渠道-图文" when subscribe_scene in channel_article_scenes {
    description "从文章（含他人转载）关注"
    priority 30
  }

  tag "渠道-广告" when subscribe_scene == "ADD_SCENE_WECHAT_ADVERTISEMENT" {
    description "微信广告关注"
    priority 30
  }

  tag "渠道-支付" when subscribe_scene == "ADD_SCENE_PAID" {
    description "支付后关注"
    priority 30
  }

  tag "渠道-视频号" when subscribe_scene in channel_video_scenes {
    description "视频号或视频号直播关注"
    priority 30
  }

  tag "渠道-其他" when subscribe_scene not in channel_listed_scenes and subscribe_scene != "" {
    description "公众号迁移、其他及未知渠道"
    priority 30
  }
}
